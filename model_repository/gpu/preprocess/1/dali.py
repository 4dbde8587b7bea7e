"""Triton DALI-backend model `preprocess` (GPU profile), autoserialized by the backend at load.

The pipeline is predilect's one preprocessing definition (``predilect.serving.dali_pipeline``,
built by ``predilect.preprocess.dali.pipeline_definition``), derived from the ``dali_params.json``
that ``predilect assemble --profile gpu`` writes beside this file. Triton passes each instance's
device; the ``device_id=0`` it is defined with is only the placeholder a GPU pipeline needs.
"""

from nvidia.dali.plugin.triton import autoserialize

from predilect.serving.dali_pipeline import DaliParams, served_pipeline

PARAMS = DaliParams.beside(__file__)

fundus_preprocess = autoserialize(served_pipeline(PARAMS))
