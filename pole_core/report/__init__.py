"""Run report: the summary table (mIoU per stage, timings, prompt histogram) and figures."""
