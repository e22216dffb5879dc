-- severity warn; passes on the shipped data. Refs exactly one model.
{{ config(severity='warn') }}
select customer_id, first_order, most_recent_order
from {{ ref('customers') }}
where first_order > most_recent_order
