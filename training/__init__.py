"""Training side of streamsv (torch): the network (model.py), training (train.py), export to the
ONNX graphs the daemon runs (export_weights.py), evaluation (eval.py), the data listings
(datasets.py), the teacher (teacher.py) and the scoring backend (fit_backend.py).

Run from the repository root as modules: ``python -m training.train --out runs/mixer``. Not part
of the installed daemon (pyproject packages only ``streamsv``); the daemon never imports this.
This file imports nothing, so ``training.datasets`` loads without torch."""
