select
    id as customer_id,
    first_name,
    last_name,
    nullif(trim(email), '') as email,
    signed_up_at,
    updated_at
from {{ ref('raw_customers') }}
