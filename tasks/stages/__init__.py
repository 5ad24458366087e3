"""The pipeline's stages as plain functions, one module per stage: data, sft, reward, ppo, dpo, eval.

Each module's ``run(...)`` reads top to bottom: load the stage's inputs from the run directory
(``tasks.artifacts.RunDir``), call rlhf_core / data_checks, log through the tracker it is given,
write the stage's files, and hand back a :class:`~tasks.stages.common.StageOutputs`. No Prefect
and no MLflow here: the Prefect tasks (tasks/data.py, tasks/training.py, tasks/evaluation.py)
open the stage's MLflow run, pass its tracker in, and record the outputs once that run closed.
"""
