"""The search service on Optuna: the study file and its config, storage, the study (sampler,
pruner, reference trials), the life of a claimed trial, workers and their launch. Only a worker,
where it runs a trial, touches ``tuner.learn`` (and so torch)."""
