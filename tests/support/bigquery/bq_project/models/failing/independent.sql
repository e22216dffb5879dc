-- no dependency on bad_model: must still run
select 1 as ok
