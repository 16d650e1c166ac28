package lease

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/internal/natstest"
)

func startLeases(t *testing.T, js []jetstream.JetStream, ttl time.Duration) []*Lease {
	t.Helper()
	var out []*Lease
	for i, j := range js {
		l, err := Start(context.Background(), Config{JS: j, ID: fmt.Sprintf("sup-%d", i), TTL: ttl, Logger: zerolog.New(zerolog.NewTestWriter(t))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(l.Close)
		out = append(out, l)
	}
	return out
}

func leaders(ls []*Lease) (n int, who *Lease) {
	for _, l := range ls {
		if l.IsLeader() {
			n++
			who = l
		}
	}
	return n, who
}

func TestLeaseOneLeaderAndFailover(t *testing.T) {
	srv := natstest.RunServer(t)
	const ttl = 300 * time.Millisecond
	var js []jetstream.JetStream
	for i := 0; i < 3; i++ {
		j, _ := jetstream.New(srv.Connect())
		js = append(js, j)
	}
	ls := startLeases(t, js, ttl)
	var first *Lease
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		n, who := leaders(ls)
		if n != 1 {
			return fmt.Errorf("%d leaders", n)
		}
		first = who
		return nil
	})
	// Stable: still exactly that one over several renewals.
	deadline := time.Now().Add(3 * ttl)
	for i := 0; time.Now().Before(deadline) && i < 1000; i++ {
		if n, who := leaders(ls); n > 1 || n == 1 && who != first {
			t.Fatalf("leadership moved or split: %d leaders", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Released on Close: another takes over within one renewal period.
	start := time.Now()
	first.Close()
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		n, who := leaders(ls)
		if n != 1 || who == first {
			return fmt.Errorf("%d leaders", n)
		}
		return nil
	})
	t.Logf("failover after release: %v (ttl %v)", time.Since(start), ttl)
}

// TestLeaseExpiresWhenHolderVanishes: a holder that dies without releasing
// is replaced after the TTL, and never two leaders at once.
func TestLeaseExpiresWhenHolderVanishes(t *testing.T) {
	srv := natstest.RunServer(t)
	const ttl = 300 * time.Millisecond
	nc1 := srv.Connect()
	j1, _ := jetstream.New(nc1)
	a := startLeases(t, []jetstream.JetStream{j1}, ttl)[0]
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if !a.IsLeader() {
			return fmt.Errorf("not leader")
		}
		return nil
	})
	j2, _ := jetstream.New(srv.Connect())
	b := startLeases(t, []jetstream.JetStream{j2}, ttl)[0]
	nc1.Close() // a's renewals fail from now on
	start := time.Now()
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if a.IsLeader() && b.IsLeader() {
			t.Fatal("two leaders")
		}
		if !b.IsLeader() {
			return fmt.Errorf("b not leader yet")
		}
		return nil
	})
	took := time.Since(start)
	t.Logf("takeover after the holder vanished: %v (ttl %v)", took, ttl)
	if a.IsLeader() {
		t.Fatal("vanished holder still thinks it leads")
	}
}

// TestLeaseSurvivesItsBucketBeingDeleted: `nats kv del mcp_leader` must not
// leave the fleet without a leader: the bucket is re-created and one
// replica leads again within 2×TTL, never two at once.
func TestLeaseSurvivesItsBucketBeingDeleted(t *testing.T) {
	srv := natstest.RunServer(t)
	const ttl = 300 * time.Millisecond
	j1, _ := jetstream.New(srv.Connect())
	j2, _ := jetstream.New(srv.Connect())
	ls := startLeases(t, []jetstream.JetStream{j1, j2}, ttl)
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n, _ := leaders(ls); n != 1 {
			return fmt.Errorf("%d leaders", n)
		}
		return nil
	})
	admin, _ := jetstream.New(srv.Connect())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := admin.DeleteKeyValue(ctx, Bucket); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	// The old holder steps down when its renewals fail; then someone
	// re-creates the bucket and leads.
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		n, _ := leaders(ls)
		if n > 1 {
			t.Fatal("two leaders")
		}
		if _, err := admin.KeyValue(ctx, Bucket); err != nil {
			return fmt.Errorf("bucket not re-created yet: %v", err)
		}
		if n != 1 {
			return fmt.Errorf("%d leaders", n)
		}
		return nil
	})
	took := time.Since(deleted)
	t.Logf("leader again %v after the lease bucket was deleted (ttl %v)", took.Round(time.Millisecond), ttl)
	if took > 2*ttl+ttl/3+100*time.Millisecond {
		t.Errorf("leader again only after %v, want within about 2×TTL", took)
	}
	if kv, err := admin.KeyValue(ctx, Bucket); err != nil {
		t.Fatal(err)
	} else if st, _ := kv.Status(ctx); st.TTL() != ttl {
		t.Errorf("re-created bucket TTL %v, want %v", st.TTL(), ttl)
	}
}
