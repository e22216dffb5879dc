-- CPU-bound query that runs for seconds on the local server
select 1 as k, sum(mod(a * b + c, 7)) as s
from unnest(generate_array(1, {{ var('slow_n') }})) a
cross join unnest(generate_array(1, {{ var('slow_n') }})) b
cross join unnest(generate_array(1, div({{ var('slow_n') }}, 10))) c
