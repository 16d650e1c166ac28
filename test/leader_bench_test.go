package test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/supervisor"
	"github.com/tether-dev/tether/supervisor/lease"
)

// leaderTrials is how many faults each leadership benchmark injects.
const leaderTrials = 10

// benchReplica is the replicas' config in the leadership benchmarks. They
// log nothing: a benchmark's output keeps only its first 10 lines, which
// must be the per-trial figures.
func benchReplica(ttl time.Duration) func(*supervisor.Config) {
	return func(cfg *supervisor.Config) {
		cfg.LeaseTTL = ttl
		cfg.Logger = zerolog.Nop()
	}
}

// soleLeader waits until exactly one replica commands and returns it.
func (r *replicaSet) soleLeader(tb testing.TB) int {
	tb.Helper()
	l := -1
	natstest.CheckFor(tb, 30*time.Second, time.Millisecond, func() error {
		ls := leaders(r.sups, -1)
		if len(ls) != 1 {
			return fmt.Errorf("leaders %v", ls)
		}
		l = ls[0]
		return nil
	})
	return l
}

// watchLeaders polls every replica each millisecond until done says stop
// (given the replicas commanding now), and fails if two ever command at
// once.
func (r *replicaSet) watchLeaders(tb testing.TB, within time.Duration, done func(now time.Time, leading []int) bool) {
	tb.Helper()
	deadline := time.Now().Add(within)
	for i := 0; ; i++ {
		now := time.Now()
		ls := leaders(r.sups, -1)
		if len(ls) > 1 {
			tb.Fatalf("replicas %v command at once", ls)
		}
		if done(now, ls) {
			return
		}
		if now.After(deadline) || i > int(within/time.Millisecond)+10 {
			tb.Fatalf("no new leader within %v (leaders %v)", within, ls)
		}
		time.Sleep(time.Millisecond)
	}
}

// rejoin restores old's link and waits until it is connected again and
// sees next holding the lease.
func (r *replicaSet) rejoin(tb testing.TB, old, next int) {
	tb.Helper()
	r.proxies[old].Pass()
	natstest.CheckFor(tb, 30*time.Second, 5*time.Millisecond, func() error {
		if s := r.sups[old]; !s.Conn().IsConnected() || s.LeaderID() != r.sups[next].ReplicaID() {
			return fmt.Errorf("replica %d: connected %v, sees holder %q", old, s.Conn().IsConnected(), s.LeaderID())
		}
		return nil
	})
}

// faultPhase is how long trial i waits before its fault: spread over one
// renewal period (TTL/3), so that trials sample every phase of the
// leader's renewals and the followers' campaigns. Without it each trial
// started right after a replica's campaign (the previous trial waited for
// one) and measured only two phases: TTL and 4/3 TTL, nothing between.
func faultPhase(i int, ttl time.Duration) time.Duration {
	return time.Duration(i*37%100) * ttl / 300
}

// reportTimes reports p50 and max of d in ms and as multiples of ttl.
func reportTimes(b *testing.B, what string, d []time.Duration, ttl time.Duration) {
	slices.Sort(d)
	p50, top := d[len(d)/2], d[len(d)-1]
	ms := func(x time.Duration) float64 { return float64(x) / float64(time.Millisecond) }
	b.ReportMetric(ms(p50), what+"-p50-ms")
	b.ReportMetric(ms(top), what+"-max-ms")
	b.ReportMetric(ms(ttl), "ttl-ms")
	b.ReportMetric(float64(p50)/float64(ttl), what+"-p50/ttl")
	b.ReportMetric(float64(top)/float64(ttl), what+"-max/ttl")
	b.Logf("%s over %d trials: p50 %v, max %v (lease TTL %v: %.2fx, %.2fx); all %v", what, len(d),
		p50.Round(time.Millisecond), top.Round(time.Millisecond), ttl, float64(p50)/float64(ttl), float64(top)/float64(ttl), roundAll(d))
}

func roundAll(d []time.Duration) []time.Duration {
	out := make([]time.Duration, len(d))
	for i, x := range d {
		out[i] = x.Round(time.Millisecond)
	}
	return out
}

// BenchmarkLeaderFailover measures, on three replicas of a 3-node cluster,
// the time from the leader's link failing to another replica commanding:
// crash (its proxy cuts every link and refuses new ones; no lease
// release) and partition (its proxy black-holes the link). Ten trials per
// case on one cluster, each cutting whichever replica leads (at a phase of
// its renewals of its own), then restoring it; the lease TTL is the reference (the key outlives a dead
// leader by up to one TTL; followers campaign every TTL/3).
//
//	go test -run '^$' -bench LeaderFailover -benchtime 1x -timeout 30m ./test/
func BenchmarkLeaderFailover(b *testing.B) {
	for _, ttl := range []time.Duration{300 * time.Millisecond, time.Second, lease.DefaultTTL} {
		for _, fault := range []string{"crash", "partition"} {
			b.Run(fmt.Sprintf("%s/ttl=%v", fault, ttl), func(b *testing.B) {
				r := startReplicaSet(b, benchReplica(ttl))
				var d []time.Duration
				for b.Loop() {
					for i := range leaderTrials {
						d = append(d, r.failover(b, fault, faultPhase(i, ttl)))
					}
				}
				reportTimes(b, "failover", d, ttl)
			})
		}
	}
}

// failover cuts or black-holes the leader's link after phase, returns how
// long until another replica commands, and restores the link.
func (r *replicaSet) failover(b *testing.B, fault string, phase time.Duration) time.Duration {
	b.Helper()
	old := r.soleLeader(b)
	time.Sleep(phase)
	start := time.Now()
	if fault == "crash" {
		r.proxies[old].Cut()
	} else {
		r.proxies[old].BlackHole()
	}
	var took time.Duration
	next := -1
	r.watchLeaders(b, 30*time.Second, func(now time.Time, ls []int) bool {
		if len(ls) == 1 && ls[0] != old {
			took, next = now.Sub(start), ls[0]
			return true
		}
		return false
	})
	r.rejoin(b, old, next)
	return took
}

// BenchmarkLeaderBucketDeleted measures, on three replicas of a 3-node
// cluster, the time from `mcp_leader` being deleted (js.DeleteKeyValue)
// to a replica commanding again after the gap, and the gap itself (no
// replica commanding). The replica that re-creates the bucket holds the
// lease one TTL before it leads, so a holder that missed the deletion has
// stepped down: the reference is the lease TTL.
//
//	go test -run '^$' -bench LeaderBucketDeleted -benchtime 1x -timeout 30m ./test/
func BenchmarkLeaderBucketDeleted(b *testing.B) {
	for _, ttl := range []time.Duration{300 * time.Millisecond, time.Second} {
		b.Run(fmt.Sprintf("ttl=%v", ttl), func(b *testing.B) {
			r := startReplicaSet(b, benchReplica(ttl))
			js, err := jetstream.New(observer(b, r.c.Servers[1].URL()))
			if err != nil {
				b.Fatal(err)
			}
			var working, gaps []time.Duration
			for b.Loop() {
				for i := range leaderTrials {
					w, g := r.bucketDeleted(b, js, faultPhase(i, ttl))
					working, gaps = append(working, w), append(gaps, g)
				}
			}
			reportTimes(b, "working", working, ttl)
			reportTimes(b, "gap", gaps, ttl)
		})
	}
}

// bucketDeleted deletes mcp_leader after phase and returns the time to a
// commanding replica after the gap, and the gap's length.
func (r *replicaSet) bucketDeleted(b *testing.B, js jetstream.JetStream, phase time.Duration) (working, gap time.Duration) {
	b.Helper()
	r.soleLeader(b)
	time.Sleep(phase)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := js.DeleteKeyValue(ctx, lease.Bucket); err != nil {
		b.Fatal(err)
	}
	var gapFrom time.Time
	r.watchLeaders(b, 30*time.Second, func(now time.Time, ls []int) bool {
		switch {
		case len(ls) == 0 && gapFrom.IsZero():
			gapFrom = now
		case len(ls) == 1 && !gapFrom.IsZero():
			working, gap = now.Sub(start), now.Sub(gapFrom)
			return true
		}
		return false
	})
	return working, gap
}
