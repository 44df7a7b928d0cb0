"""The lightweight students' methods (``-student unet | unetpp``): supervised, mean teacher, UniMatch-style
weak-to-strong, and the SAM-guided Knowledge Mining, SemiSAM and SAM-Match."""
from sam2_train.methods.unet import base, knowledge_mining, mean_teacher, sam_match, semisam, weak_to_strong  # noqa: F401
