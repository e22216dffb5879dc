-- view over the seed
select id, upper(name) as name, coalesce(amount, 0) as amount, signup_date, active
from {{ ref('raw_customers') }}
