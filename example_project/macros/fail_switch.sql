{#-
  Failure switches for demos and tests, used as a project-wide pre-hook (see dbt_project.yml).
  Renders to an empty string (no statement, dbt skips the hook) unless a var targets the current node.

  * fail_model: when it equals the node's name, the hook runs a statement that fails at run time.
  * flaky_model / flaky_dir / flaky_failures: each execution of flaky_model first writes one new
    attempt file into flaky_dir (COPY is not transactional, so the file survives the failure), then
    fails while the number of attempt files in flaky_dir is <= flaky_failures (default 1).
    flaky_dir must already exist.

  The failing statements use DuckDB's error() / COPY / glob() (fail_model also has a PostgreSQL
  form, for the postgres target); they are only ever rendered when the vars are set, so other
  adapters (e.g. the bigquery target) see empty hooks.

  * warehouse_latency: seconds every model, seed and snapshot first waits on the server
    (pg_sleep; postgres target only), so the example behaves like a warehouse where each query
    takes a while and the orchestrator's CPU is idle.
-#}
{% macro fail_switch() %}
  {%- if execute -%}
    {%- set node_name = model.name -%}
    {%- set fail_model = var('fail_model', none) -%}
    {%- set flaky_model = var('flaky_model', none) -%}
    {%- set latency = var('warehouse_latency', none) -%}
    {%- if latency and target.type == 'postgres' -%}
      select pg_sleep({{ latency | float }});
    {%- endif -%}
    {%- if fail_model and fail_model == node_name and target.type == 'postgres' -%}
      do $$ begin raise exception 'dagster-watcher demo: model {{ node_name }} failed on purpose (dbt var fail_model)'; end $$
    {%- elif fail_model and fail_model == node_name -%}
      select error('dagster-watcher demo: model {{ node_name }} failed on purpose (dbt var fail_model)')
    {%- elif flaky_model and flaky_model == node_name -%}
      {%- set flaky_dir = var('flaky_dir', none) -%}
      {%- if not flaky_dir -%}
        {{ exceptions.raise_compiler_error("dagster-watcher demo: var flaky_model is set but var flaky_dir is not") }}
      {%- endif -%}
      {%- set failures = var('flaky_failures', 1) | int -%}
      {%- set dir = (flaky_dir | string).rstrip('/') | replace("'", "''") -%}
      {%- set stamp = modules.datetime.datetime.now().strftime('%Y%m%dT%H%M%S%f') -%}
      copy (select 1 as attempt) to '{{ dir }}/attempt_{{ invocation_id }}_{{ node_name }}_{{ stamp }}.csv' (header false);
      select case
        when (select count(*) from glob('{{ dir }}/attempt_*.csv')) <= {{ failures }}
        then error('dagster-watcher demo: model {{ node_name }} failed on purpose (flaky attempt '
                   || (select count(*) from glob('{{ dir }}/attempt_*.csv'))::varchar
                   || ' of {{ failures }} failing, dbt var flaky_model)')
      end
    {%- endif -%}
  {%- endif -%}
{% endmacro %}
