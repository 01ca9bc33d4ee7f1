"""The names of a trial's results, from the training loop to the storage and the exports.

tlstudy.train.fit yields one record per epoch with the EPOCH_KEYS; the last record also
holds the trial's results in a nested dict under SUMMARY. Ray Tune flattens a reported
dict before its scheduler and searcher see it, so there the results arrive as
"summary/<name>" (SUMMARY_PREFIX). tlstudy.tune_optuna reports METRIC at STEP to Optuna
every epoch, stores the epoch records as the trial's HISTORY user attribute and every
summary value, without the prefix, as a user attribute of its own; tlstudy.export and
tlstudy.analysis read them back under these names (trials.csv, epochs.csv).
"""
METRIC = "val_loss"  # what Optuna minimises and prunes on; a COMPLETE trial's value is its lowest
STEP = "epoch"  # the step of Optuna's intermediate values
EPOCH_KEYS = (STEP, "train_loss", "train_acc", METRIC, "val_acc", "lr", "epoch_s")  # one record per epoch

SUMMARY = "summary"  # the last epoch's record holds the trial's results under this key
SUMMARY_PREFIX = SUMMARY + "/"  # ... which Ray Tune's flattening turns into this prefix
BEST_VAL_LOSS = "best_val_loss"  # the lowest val loss: a COMPLETE trial's value
TEST_BEST_ACC = "test_best_acc"  # test accuracy of the best-val-loss checkpoint; only a finished trial has it
PREDICTIONS = "predictions"  # per-image test predictions (JSON); stored as an artifact, not an attribute

# The summary names as the searcher receives them from Ray Tune.
SUMMARY_BEST_VAL_LOSS = SUMMARY_PREFIX + BEST_VAL_LOSS  # "summary/best_val_loss"
SUMMARY_TEST_BEST_ACC = SUMMARY_PREFIX + TEST_BEST_ACC  # "summary/test_best_acc"
SUMMARY_PREDICTIONS = SUMMARY_PREFIX + PREDICTIONS  # "summary/predictions"

# User attributes of an Optuna trial besides the summary's.
HISTORY = "history"  # the epoch records, as JSON
FAIL_REASON = "fail_reason"  # why a FAIL trial failed
NODE_ID = "node_id"  # the Ray node the trial ran on
