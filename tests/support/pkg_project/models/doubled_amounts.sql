select id, {{ local_pkg.doubled('amount') }} as doubled from {{ ref('amounts') }}
