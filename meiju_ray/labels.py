"""Label sets of the MEIJU'25 baseline (docs: baseline.md §2), lower-case strings, ids = list
index."""

EMOTIONS: tuple[str, ...] = ("happy", "surprise", "sad", "disgust", "anger", "fear", "neutral")
INTENTS: tuple[str, ...] = (
    "questioning",
    "agreeing",
    "acknowledging",
    "encouraging",
    "consoling",
    "suggesting",
    "wishing",
    "neutral",
)
# A label written as one of these in a list file means "not annotated for this task": the row
# is kept and its loss for that task is masked (e.g. MELD has no intent labels).
MISSING_LABELS: frozenset[str] = frozenset({"-", "none", "_"})
MISSING_ID = -1
