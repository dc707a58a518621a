"""The names every layer shares: a trial's stored attributes and the metrics a trial reports.

Writers (the trainer's metrics, the worker's trial lifecycle, the study) and readers (status, best,
export, report, progress) import these instead of spelling the strings, so a rename is one edit.
No imports: any layer may use this module.
"""

# Metrics of one epoch on validation (tuner.learn.metrics and tuner.learn.train write them).
AVERAGE_PRECISION = "average_precision"
BALANCED_ACCURACY = "balanced_accuracy"  # at the trial's operating point
MACRO_F1 = "macro_f1"
RECALL = "recall"  # of the positive class, at the threshold
PRECISION = "precision"
CLASS_AVERAGE_PRECISION = "class_average_precision"  # C > 2, of the class to detect, by its probability
BALANCED_ACCURACY_HALF = "balanced_accuracy@0.5"  # at the naive cut 0.5, for comparison
MACRO_F1_HALF = "macro_f1@0.5"
THRESHOLD = "threshold"  # on the calibrated probability of the positive class
CLASS_THRESHOLDS = "class_thresholds"  # C > 2: decide the class with the largest probability / its threshold
TEMPERATURE = "temperature"
ECE = "ece"
ECE_CALIBRATED = "ece_calibrated"
LOSS = "loss"  # the trial's own focal loss on validation: not comparable across trials
TRAIN_LOSS = "train_loss"
FOLD_SPREAD = "fold_spread"  # k-fold trials: standard deviation of the objective over the folds
OBJECTIVES = (AVERAGE_PRECISION, BALANCED_ACCURACY, MACRO_F1)  # what study.metric may name
VALIDATION = (AVERAGE_PRECISION, BALANCED_ACCURACY, MACRO_F1, RECALL, PRECISION, BALANCED_ACCURACY_HALF,
              MACRO_F1_HALF, ECE, ECE_CALIBRATED, LOSS, FOLD_SPREAD)

# Trial user attributes written by the trial lifecycle and the study.
SEED = "seed"
EPOCHS = "epochs"
WORKER = "worker"
REFERENCE = "reference"  # the label of a reference trial
UNWEIGHTED = "unweighted"  # train with no class weights whatever the params say
GRID = "grid"
RESUMED_FROM_EPOCH = "resumed_from_epoch"
PRUNE_REASON = "prune_reason"
STOP_REASON = "stop_reason"
ERROR = "error"
RETRIES = "retries"  # times this lineage was queued again after a transient error
RETRY_REASON = "retry_reason"  # why a failed trial was queued again
CHECKPOINT_DISCARDED = "checkpoint_discarded"  # why a retry's checkpoint could not be read (it restarted)
DURATION_S = "duration_s"

# Study user attributes.
CONFIG = "tuner_config"
STUDY_KEY = "study_key"  # random, given at creation: files left by a deleted or another study of the name are not its own
TARGET = "n_trials"
DATA = "data"  # the classes by name and their training-split counts
WORKER_SLOTS = "worker_slots"  # worker indices that start-study runs have handed out
BEST_TEST = "best_test"
FINAL_TEST = "final_test"  # the test check of the final model when it is a mean of trials
FINAL_DECISION = "final_decision"  # its trials, temperature and thresholds, with a test split or without
REFERENCES_TEST = "references_test"
