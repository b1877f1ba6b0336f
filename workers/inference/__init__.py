"""⑤a Inference: series -> geometry-checked volume -> model. Needs the ``[worker]`` extra."""
