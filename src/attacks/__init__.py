from .references import ReferenceSelection, select_references
from .registry import (ATTACKS, DEFAULTS, MIN_MODELS_PER_EXAMPLE_VARIANCE, OFFLINE_ATTACKS, ONLINE_ATTACKS,
                       PER_EXAMPLE_VARIANCE, Attack, PoolLogProb, Population, References, check_names, min_models,
                       run_attacks)

__all__ = ["ATTACKS", "DEFAULTS", "MIN_MODELS_PER_EXAMPLE_VARIANCE", "PER_EXAMPLE_VARIANCE",
           "OFFLINE_ATTACKS", "ONLINE_ATTACKS", "Attack", "PoolLogProb", "Population", "ReferenceSelection",
           "References", "check_names", "min_models", "run_attacks", "select_references"]
