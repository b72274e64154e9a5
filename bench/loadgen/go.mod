module nudge.dev/bench/loadgen

go 1.21
