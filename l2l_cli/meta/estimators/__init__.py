"""Meta-gradient estimators: one module each (tbptt, es, pes), registered in ``core.registry.ESTIMATORS`` (the
config group ``estimator=``); ``lstm_bptt`` is the LSTM's hand-written BPTT, registered as its fast path under tbptt."""
