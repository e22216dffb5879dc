select
    order_date,
    count(*) as orders,
    sum(case when status in ('returned', 'return_pending') then 0 else amount end) as revenue
from {{ ref('orders') }}
group by order_date
