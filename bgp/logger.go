package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
)

// gobgpLogger adapts GoBGP's logger interface to log/slog, and shows every per-peer log
// event to an observer. The observer is how the speaker learns why a session is down: GoBGP
// v3's API reports a peer's state but not the failed connect, the NOTIFICATION or the hold
// timer expiry behind it, which it only logs.
type gobgpLogger struct {
	log *slog.Logger
	// observe sees each event whose Topic is "Peer"; it must be quick and must not call
	// back into GoBGP (it runs on GoBGP's goroutines, some holding locks).
	observe func(msg string, fields gobgplog.Fields)
}

var _ gobgplog.Logger = (*gobgpLogger)(nil)

func (l *gobgpLogger) Panic(msg string, fields gobgplog.Fields) {
	l.emit(slog.LevelError, msg, fields)
	panic(fmt.Sprintf("gobgp: %s %v", msg, fields))
}

// Fatal is used by GoBGP for states it cannot continue from; a panic keeps that promise
// (the caller does not go on) while leaving the stack in the log.
func (l *gobgpLogger) Fatal(msg string, fields gobgplog.Fields) {
	l.emit(slog.LevelError, msg, fields)
	panic(fmt.Sprintf("gobgp: %s %v", msg, fields))
}

func (l *gobgpLogger) Error(msg string, fields gobgplog.Fields) {
	l.emit(slog.LevelError, msg, fields)
}

func (l *gobgpLogger) Warn(msg string, fields gobgplog.Fields) {
	l.emit(slog.LevelWarn, msg, fields)
}

func (l *gobgpLogger) Info(msg string, fields gobgplog.Fields) {
	l.emit(slog.LevelInfo, msg, fields)
}

func (l *gobgpLogger) Debug(msg string, fields gobgplog.Fields) {
	l.emit(slog.LevelDebug, msg, fields)
}

// SetLevel is ignored: the slog handler decides what is written.
func (l *gobgpLogger) SetLevel(gobgplog.LogLevel) {}

// GetLevel always claims Debug, because GoBGP logs failed connection attempts (the reason
// for "connection refused" in the status) only when its logger is at Debug. What reaches
// the log is still filtered by the slog handler's level.
func (l *gobgpLogger) GetLevel() gobgplog.LogLevel { return gobgplog.DebugLevel }

func (l *gobgpLogger) emit(level slog.Level, msg string, fields gobgplog.Fields) {
	if l.observe != nil && fields["Topic"] == "Peer" {
		l.observe(msg, fields)
	}
	if !l.log.Enabled(context.Background(), level) {
		return
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	attrs := make([]slog.Attr, 0, len(keys))
	for _, k := range keys {
		attrs = append(attrs, slog.Any(k, logValue(fields[k])))
	}
	l.log.LogAttrs(context.Background(), level, msg, attrs...)
}

// logValue renders GoBGP's field values: errors and Stringers as text, so that a JSON
// handler does not print them as empty objects. GoBGP passes typed nil pointers (a state
// reason that is not set) whose String method would panic; those print as "<nil>".
func logValue(v any) (out any) {
	defer func() {
		if recover() != nil {
			out = "<nil>"
		}
	}()
	switch x := v.(type) {
	case error:
		return x.Error()
	case fmt.Stringer:
		return x.String()
	}
	return v
}
