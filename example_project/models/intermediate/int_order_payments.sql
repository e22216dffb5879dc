-- Ephemeral: payments rolled up to one row per order.
{% set methods = ['card', 'paypal', 'bank_transfer', 'voucher'] %}
select
    order_id,
    {% for m in methods -%}
    sum(case when payment_method = '{{ m }}' then amount else 0 end) as {{ m }}_amount,
    {% endfor -%}
    count(*) as payment_count,
    sum(amount) as amount
from {{ ref('stg_payments') }}
group by order_id
