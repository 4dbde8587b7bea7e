"""What vulture (``make lint``, ``[tool.vulture]`` in pyproject.toml) cannot see used, and why.

Each name here is used, by something vulture does not read: a third-party object that reads the
attribute, serialisation by field name (``dataclasses.asdict``, pydantic, JSON reports), or a public
entry point named in a document. Not imported by anything; vulture reads it as uses of the names.
Add a name only with its reason; prefer deleting code nobody calls.
"""

# ruff: noqa
_ = object()

# Attributes a third-party object reads once set: onnxruntime.SessionOptions, ssl.SSLContext,
# pynetdicom.AE, pydicom Dataset attributes (DICOM keywords), tokenizers.Tokenizer, torch's
# cudnn/dynamo switches, tensorrt.plugin launch parameters, Triton model-config protobuf fields; and an
# exception's __cause__, which Python's traceback reads.
_.__cause__
_.intra_op_num_threads
_.inter_op_num_threads
_.execution_mode
_.minimum_version
_.verify_mode
_.acse_timeout
_.maximum_associations
_.require_calling_aet
_.ManufacturerModelName
_.SoftwareVersions
_.SeriesDescription
_.SpecificCharacterSet
_.CodingSchemeDesignator
_.CodingSchemeName
_.CodingSchemeResponsibleOrganization
_.CodingSchemeIdentificationSequence
_.post_processor
_.benchmark
_.recompile_limit
_.grid_x
_.grid_y
_.block_x
_.default_timeout_microseconds
_.max_queue_delay_microseconds
_.zero_data
_.random_data

# Fields written out by name (asdict / model_dump / JSON reports and schemas), read back by reports,
# docs/reliability/*.json and the client's JSON Schemas rather than by attribute in the code.
_.preprocess_ms_per_image  # benchmarks.inprocess
_.infer_ms_per_image
_.requests_per_s  # benchmarks.locust_runner.LoadResult
_.p50_ms
_.p90_ms
_.p99_ms
_.loadgen_cpu_cores
_.loadgen_cpu_s  # read back by name from the JSON of `predilect bench gap` (gap.Measured.of_point)
_.ended_within_s  # benchmarks.reliability.Summary
_.answered_p50_s
_.answered_p90_s
_.answered_p99_s
_.refused_p50_s
_.attempts_mean
_.queue_ms  # benchmarks.triton_stats
_.compute_input_ms
_.request_ms  # read back by name from the JSON (report.stage_table)
_.compute_infer_ms
_.compute_output_ms
_.auroc_reference  # build.tensorrt.accuracy: the gate report in the engine sidecar
_.auroc_engine
_.max_abs_dpixel  # build.decoder_gate: the decoder gate's report
_.basis  # training.phantom.cameras.Acquisition: what a profile rests on, cameras.toml -> phantom.json
_.auroc_served
_.min_shape  # build.tensorrt.sidecar: the engine's optimisation profile
_.opt_shape
_.schema_version  # client.records / client.exam: JSON Schema fields
_.gradable_images
_.ungradable_eyes
_.missing_eyes
_.rules_digests
_.clip_fundus  # models.uopsl.PretrainWeights: the loss weights, saved with the run
_.clip_oct
_.site_oct
_.site_fundus
_.cls_fundus  # models.coda.CodaWeights: read by name, as PretrainWeights
_.cls_oct
_.prototype

# Result records: what a run measured, returned to its caller (tests, notebooks) beside what the
# command prints.
_.loaded  # models.pretrained.LoadReport
_.resumed_from_step  # training.loop.FitResult
_.world_size
_.val_macro_auroc  # training.finetune.FinetuneResult
_.val_site_macro_auroc  # training.pretrain.PretrainResult
_.val_global_macro_auroc
_.train_images  # training.phantom.probe.ProbeResult
_.test_images

# Public entry points only tests call here.
_.wait_idle  # dicom.gateway.DicomGateway: lets an embedding program (and the tests) wait for the queue
pooled_pixel_probe  # training.phantom.probe: reproduces training/RESULTS.md's pixel-probe figure

# Nothing calls it yet: the Triton config read-back the ensembles change added (serving.triton_config);
# its owner uses or deletes it.
from_model_config

# The preprocessing package (predilect/preprocess/) is another change's: only tests call this one; its
# owner keeps it or deletes it with them.
load_oct_scans

# Read by the HTML report's Jinja template (client/predilect/client/report.html.j2), not by Python code.
_.anchor  # client.report.ExamView
_.patients  # client.report.Worklist
_.urgent
_.recall
_.referable_by_disease
_.ungradable_by_reason
_.refused_by_kind

# Settings written onto pynetdicom's objects, read by pynetdicom (dicom.gateway).
_.STORE_RECV_CHUNKED_DATASET  # pynetdicom._config: received datasets go to a file, never whole into memory
_.require_called_aet  # AE: refuse an association whose called AE title is not the gateway's
_.verify_request  # AssociationServer (socketserver): the per-peer association limit
_.inner_grpc_url  # serving.server.TritonServer: tritonserver's own socket behind the front, for tests and benchmarks
