"""Names vulture reports as unused that are in fact used, in ways it cannot see (tests/test_lint.py passes this file
to vulture). Only such false positives belong here, each with its reason; dead code is deleted instead.

vulture reads this file and never runs it; ``_`` stands for any object (``_.name`` marks an attribute as used).
"""
# Method classes registered by the @register decorator (sam2_train/methods/registry.py) and reached through
# method_class(-method, -student, script), never by name.
Supervised2D  # sam2_train/methods/sss_2d.py
FixMatch2D  # sam2_train/methods/sss_2d.py
SSS2D  # sam2_train/methods/sss_2d.py
SSSLabeledOnly2D  # sam2_train/methods/sss_2d.py
Supervised3D  # sam2_train/methods/sss_3d.py
FixMatch3D  # sam2_train/methods/sss_3d.py
SSS3D  # sam2_train/methods/sss_3d.py
SSSLabeledOnly3D  # sam2_train/methods/sss_3d.py
KMOneTime  # sam2_train/methods/unet/knowledge_mining.py
KMContinuous  # sam2_train/methods/unet/knowledge_mining.py
SAMMatch  # sam2_train/methods/unet/sam_match.py

# Attributes assigned for their effect, read by torch / by Python itself.
_.allow_tf32  # torch.backends.cudnn.allow_tf32 = True (sam2_train/engine/device.py): a cuDNN switch torch reads
_.__class__  # blk.__class__ = ... (sam2_train/model/levers.py): swaps a block's class in place

# Arguments a protocol imposes.
exc  # RunDir.__exit__(self, *exc) (sam2_train/engine/run_dir.py): the context-manager protocol's exception triple
