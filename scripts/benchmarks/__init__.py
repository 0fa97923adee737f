"""scripts/benchmark.py's parts: the standard model, FLOPs, memory, and one module per
implementation it measures (`ours`, and the references `keras_io`, `tf_tutorial`,
`tfp_layers`, each written the way its tutorial writes it)."""

# name: (module:class in benchmarks/, keyword arguments, written as its tutorial writes it)
IMPLEMENTATIONS = {"keras_io": ("keras_io:KerasIo", {}, True),
                   "tf_tutorial": ("tf_tutorial:TfTutorial", {"xla": False}, True),
                   "tfp_layers": ("tfp_layers:TfpLayers", {"xla": False}, True),
                   "keras_io_xla": ("keras_io:KerasIo", {"xla": True}, False),
                   "tf_tutorial_xla": ("tf_tutorial:TfTutorial", {"xla": True}, False),
                   "tfp_layers_xla": ("tfp_layers:TfpLayers", {"xla": True}, False)}
