"""Evaluation of frozen encoders: the contract (`Evaluator`, `register_evaluator`, the suite
table), the built-in evaluators (`mtv/eval/evaluators/`), metrics and probes, and a run's
results (`RUN/eval/<suite>.parquet` and `.json`)."""

from mtv.eval.contract import (
    Evaluator,
    Suite,
    check_settings,
    evaluator_versions,
    evaluators_of,
    image_features,
    load_data,
    measure,
    register_evaluator,
    register_suite,
    suites,
)
from mtv.eval.model import FrozenModel
from mtv.eval.results import (
    RESULT_COLUMNS,
    Evaluation,
    current_results,
    data_identity,
    eval_settings,
    evaluate_run,
    outdated_evaluators,
    read_results,
    run_suite,
    store_results,
    suite_names,
)

__all__ = [
    "RESULT_COLUMNS",
    "Evaluation",
    "Evaluator",
    "FrozenModel",
    "Suite",
    "check_settings",
    "current_results",
    "data_identity",
    "eval_settings",
    "evaluate_run",
    "evaluator_versions",
    "evaluators_of",
    "image_features",
    "load_data",
    "measure",
    "outdated_evaluators",
    "read_results",
    "register_evaluator",
    "register_suite",
    "run_suite",
    "store_results",
    "suite_names",
    "suites",
]
