select
    id as order_id,
    customer_id,
    ordered_on as order_date,
    lower(status) as status,
    updated_at
from {{ ref('raw_orders') }}
