// Engine implementation lands here.
