-- severity error (default); passes on the shipped data. Refs exactly one model.
select order_id, amount
from {{ ref('orders') }}
where amount < 0 or payment_count = 0
