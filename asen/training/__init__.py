"""Training in small named pieces, put together by `asen.train.train` (the recipe):
set-up and resume (`setup`), the run folder and its lock (`run_folder`), one step
(`step`), one epoch and validation (`epoch`), the metrics record (`records`),
checkpointing (`checkpoints`), stop requests (`stopping`) and the fault-injection test
hook (`faults`)."""
