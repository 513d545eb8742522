package datastore

import "go.uber.org/zap"

// quietZap is the etcd client's logger: errors only, so that the client's internal retries
// do not flood tabby's own structured log.
func quietZap() *zap.Logger {
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	cfg.OutputPaths = []string{"stderr"}
	l, err := cfg.Build()
	if err != nil {
		return zap.NewNop()
	}
	return l
}
