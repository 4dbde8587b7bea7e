"""Triton DALI-backend model `preprocess` (GPU profile), autoserialized by the backend at load.

The pipeline is predilect's one preprocessing definition (``predilect.serving.dali_pipeline``),
derived from the ``dali_params.json`` that ``predilect assemble --profile gpu`` writes beside
this file. Triton passes each instance's device; ``device_id=0`` here is only the placeholder
that a GPU pipeline definition needs.
"""

from nvidia.dali import pipeline_def
from nvidia.dali.plugin.triton import autoserialize

from predilect.serving.dali_pipeline import DaliParams, serving_graph

PARAMS = DaliParams.beside(__file__)


@autoserialize
@pipeline_def(batch_size=PARAMS.max_batch_size, num_threads=PARAMS.num_threads, device_id=0, exec_dynamic=True)
def fundus_preprocess():
    return serving_graph(PARAMS)
