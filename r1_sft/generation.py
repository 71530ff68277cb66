"""Generation settings shared by evaluation and chat."""
from __future__ import annotations

# DeepSeek's advice for R1 models when sampling (see shared FACTS).
R1_TEMPERATURE = 0.6
R1_TOP_P = 0.95
