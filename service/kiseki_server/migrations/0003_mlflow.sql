-- Dataset inputs of runs, as MLflow's log_input/log-inputs records them (issue 12).
-- One row per (run, dataset name, digest): logging the same dataset again updates its input tags
-- (e.g. mlflow.data.context = 'training'); `position` keeps the order they were first logged in.
CREATE TABLE run_inputs (
    run_id      uuid   NOT NULL REFERENCES runs ON DELETE CASCADE,
    name        text   NOT NULL,
    digest      text   NOT NULL,
    source_type text   NOT NULL,
    source      text   NOT NULL,
    schema      text,
    profile     text,
    tags        jsonb  NOT NULL DEFAULT '{}',
    position    bigint GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (run_id, name, digest)
);
