-- depends_on: {{ ref('raw_payments') }}
{# broken_logic = 'stg_payments' divides by the wrong factor: its unit test fails and dbt skips the
    model, so the wrong amounts never reach the warehouse (see _staging.yml). #}
select
    id as payment_id,
    order_id,
    lower(method) as payment_method,
    amount_cents / {{ 1000.0 if var('broken_logic', none) == 'stg_payments' else 100.0 }} as amount
from {{ source('raw', 'payments') }}
