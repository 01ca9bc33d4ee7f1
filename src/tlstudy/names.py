"""The names a study's records carry, in one place: what a trial reports each epoch, the user
attributes of its Optuna trials and of the study, and the files stored beside them.

The training loop writes these names, the searcher stores them, the exports and the analysis read
them back (trials.csv, epochs.csv, predictions.csv), and optuna-dashboard shows them: one module,
so that they agree, and a name changes in one place. No other module spells them out.
"""

# ---------------------------------------------------------------- what a trial reports

METRIC = "val_loss"  # what Optuna minimises and prunes on; a COMPLETE trial's value is its lowest
STEP = "epoch"  # the step of Optuna's intermediate values
EPOCH_KEYS = (STEP, "train_loss", "train_acc", METRIC, "val_acc", "lr", "epoch_s")  # one record per epoch

SUMMARY = "summary"  # the last epoch's record holds the trial's results under this key
SUMMARY_PREFIX = SUMMARY + "/"  # ... which Ray Tune's flattening turns into this prefix
BEST_VAL_LOSS = "best_val_loss"  # the lowest val loss: a COMPLETE trial's value
TEST_BEST_ACC = "test_best_acc"  # test accuracy at the best-val-loss checkpoint (replicates only)
PREDICTIONS = "predictions"  # per-image test predictions (JSON); stored as an artifact, not an attribute
WEIGHTS_SOURCE = "weights_source"  # the weights loaded: IMAGENET1K_V1, ..., none, random-fallback
RANDOM_FALLBACK = "random-fallback"  # a pretrained file was missing: a random init

# The summary names as the searcher receives them from Ray Tune.
SUMMARY_BEST_VAL_LOSS = SUMMARY_PREFIX + BEST_VAL_LOSS
SUMMARY_TEST_BEST_ACC = SUMMARY_PREFIX + TEST_BEST_ACC
SUMMARY_PREDICTIONS = SUMMARY_PREFIX + PREDICTIONS
RESUMED_AT = "resumed_at"  # the epochs a trial continued from after its worker died (a summary key)

# Beside the metrics, not reported: the state after an epoch (for its Ray Tune checkpoint), and at the
# last epoch the best-val-loss weights (the trial's model file); the trainable takes both out.
RESUME_STATE = "resume_state"
KEPT_WEIGHTS = "kept_weights"
TRIAL_ERROR = "trial_error"  # an exception in the trial, reported as its last result (not retried)

# Test checkpoints: the result-key tag (test_<tag>_acc) and the predictions' name for each.
CHECKPOINTS = {"best": "best_loss", "bestacc": "best_acc", "final": "final"}

# ---------------------------------------------------------------- a trial's user attributes

CELL = "cell"  # the variant cell, tlstudy.spaces.Cell.label()
PHASE = "phase"  # SEARCH or REPLICATE
SEARCH, REPLICATE = "search", "replicate"
TRAIN_SEED = "train_seed"  # model init, batch order, augmentation: 0 in the search, 1..K for replicates
IS_PROTOCOL = "protocol"  # True for the cell's search trial that ran the report's protocol
ROUND = "round"  # a replicate's round under --seeds auto: 1 for the first K seeds, then 2, 3, ...
HISTORY = "history"  # the epoch records, as JSON
FAIL_REASON = "fail_reason"  # why a FAIL trial failed
NODE_ID = "node_id"  # the Ray node the trial ran on
DRIVER = "driver"  # host:pid of the driver that ran it (heartbeats tell a dead one's trials)

# ---------------------------------------------------------------- the study's user attributes

SPACE = "space"  # the space's name
SPACE_SUMMARY = "space_summary"  # the space as its file defined it, with the file's hash (fast reruns)
DESIGN = "design"  # what makes its trials comparable (tlstudy.settings.StudySettings.comparability)
FINGERPRINT = "space_fingerprint"  # the hash of DESIGN
PROFILE = "profile"  # quick | full: a rerun's default
DATA = "data"  # what the data were: source, fingerprint, split sizes, notes
DATA_ARGS = "data_args"  # the data settings as `tlstudy trial` flags (best_config.json's command)
BASE_CONFIG = "base_config"  # the trial settings every trial shared
BUDGET = "budget"  # search budget, seeds and pruner
COMMAND = "command"  # the command line that ran it, password hidden
THROUGHPUT = "throughput"  # the timed training steps claim 1 is judged on
ROUNDS = "rounds"  # --seeds auto: the plan of looks, each look's level, verdicts and per-cell seed targets

# ---------------------------------------------------------------- artifacts beside the study

PREDICTIONS_FILE = "predictions_trial{number}.csv"
LEARNING_CURVE_FILE = "learning_curve_trial{number}.png"
PREDICTION_FIELDS = ["checkpoint", "image_id", "label", "pred", "score"]
KEPT_MODEL = "kept_model"  # trials.csv: the artifact id of the trial's kept model file
MODEL_FILE = "model_trial{number}.safetensors"  # a kept model, linked on its trial's dashboard page
TRIAL_STATE_FILE = "trial_state.pt"  # in a trial's Ray Tune checkpoint: what it resumes from
CHECKPOINT_MODEL_FILE = "model.safetensors"  # in a trial's last checkpoint: its best-val-loss weights
