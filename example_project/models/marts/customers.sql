-- Deliberately independent of payments, so it survives a failing stg_payments.
with order_stats as (
    select
        customer_id,
        min(order_date) as first_order,
        max(order_date) as most_recent_order,
        count(*) as number_of_orders,
        sum(case when status = 'completed' then 1 else 0 end) as completed_orders
    from {{ ref('stg_orders') }}
    group by customer_id
)

select
    c.customer_id,
    c.first_name,
    c.last_name,
    c.email,
    c.signed_up_at,
    s.first_order,
    s.most_recent_order,
    coalesce(s.number_of_orders, 0) as number_of_orders,
    coalesce(s.completed_orders, 0) as completed_orders,
    {{ dbt.datediff('s.first_order', 's.most_recent_order', 'day') }} as active_days
from {{ ref('stg_customers') }} as c
left join order_stats as s on c.customer_id = s.customer_id
