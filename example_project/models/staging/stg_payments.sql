-- depends_on: {{ ref('raw_payments') }}
{# broken_logic = 'stg_payments' divides by the wrong factor: its unit test fails and dbt skips the
    model, so the wrong amounts never reach the warehouse (see _staging.yml). #}
select
    id as payment_id,
    order_id,
    lower(method) as payment_method,
    {#- PostgreSQL keeps every digit of the division (12.5000000000000000), which its unit test's 12.5 is not. #}
    {% if target.type == 'postgres' %}cast({% endif -%}
    amount_cents / {{ 1000.0 if var('broken_logic', none) == 'stg_payments' else 100.0 }}
    {%- if target.type == 'postgres' %} as double precision){% endif %} as amount
from {{ source('raw', 'payments') }}
