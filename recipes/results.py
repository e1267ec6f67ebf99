"""Writing recipe results: numbers as strict JSON (NaN and inf become null)."""

import numpy as np


def json_safe(obj):
    """NaN / inf -> None, NumPy scalars -> Python numbers, dict keys -> str, recursively."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
