"""Events: the vLLM/SGLang wire layouts and frames → ``model.Batch``. Pure."""
