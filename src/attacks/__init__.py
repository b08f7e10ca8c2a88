from .references import ReferenceSelection, select_references
from .registry import (ATTACKS, DEFAULTS, OFFLINE_ATTACKS, ONLINE_ATTACKS, Attack, Population, check_names, min_models,
                       run_attacks)

__all__ = ["ATTACKS", "DEFAULTS", "OFFLINE_ATTACKS", "ONLINE_ATTACKS", "Attack", "Population", "ReferenceSelection",
           "check_names", "min_models", "run_attacks", "select_references"]
