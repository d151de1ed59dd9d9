"""What trained models learned: the neural couplings analysis (``make analyze``).

* :mod:`~lightning_sep.analysis.couplings` -- the NCA's student and compositional strategies, the
  linear-composition baseline and the TOD-R (paper ``dae-skipfilter-nca-mimilakis`` Sec. 3-4);
* :mod:`~lightning_sep.analysis.nca` -- the job: active test batches, Tables 1-3, heatmaps, MLflow.
"""
