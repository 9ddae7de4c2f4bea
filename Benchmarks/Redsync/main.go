// Command redsync-bench times Go's Redsync (github.com/go-redsync/redsync/v4, redigo pools,
// its default options) in the shapes of `redlock bench`: the sequential lock + unlock cycle on
// N = 1, 3, 5 nodes, and 8 goroutines taking turns on one name (stepping aside after each
// unlock until another has acquired). Build it with build.sh.
package main

import (
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-redsync/redsync/v4"
	rsredis "github.com/go-redsync/redsync/v4/redis"
	"github.com/go-redsync/redsync/v4/redis/redigo"
	"github.com/gomodule/redigo/redis"
)

func newPool(addr string) *redis.Pool {
	return &redis.Pool{
		MaxIdle: 3,
		Dial:    func() (redis.Conn, error) { return redis.Dial("tcp", addr) },
	}
}

func randName(prefix string) string {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return prefix + "-" + hex.EncodeToString(b)
}

func newRedsync(addrs []string) (*redsync.Redsync, []*redis.Pool) {
	var rp []*redis.Pool
	var pools []rsredis.Pool
	for _, a := range addrs {
		p := newPool(a)
		rp = append(rp, p)
		pools = append(pools, redigo.NewPool(p))
	}
	return redsync.New(pools...), rp
}

func closeAll(ps []*redis.Pool) {
	for _, p := range ps {
		p.Close()
	}
}

func pct(sorted []int64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q * float64(len(sorted)-1))
	return float64(sorted[i]) / 1e3
}

func cycle(nodes []string, d time.Duration) error {
	for _, n := range []int{1, 3, 5} {
		if n > len(nodes) {
			fmt.Fprintf(os.Stderr, "skip N=%d: only %d nodes given\n", n, len(nodes))
			continue
		}
		rs, rp := newRedsync(nodes[:n])
		m := rs.NewMutex(randName("redsync-bench-cycle"))
		for i := 0; i < 200; i++ {
			if err := m.Lock(); err != nil {
				closeAll(rp)
				return fmt.Errorf("warmup lock N=%d: %w", n, err)
			}
			if _, err := m.Unlock(); err != nil {
				closeAll(rp)
				return fmt.Errorf("warmup unlock N=%d: %w", n, err)
			}
		}
		lat := make([]int64, 0, 1<<16)
		end := time.Now().Add(d)
		for time.Now().Before(end) {
			t0 := time.Now()
			if err := m.Lock(); err != nil {
				closeAll(rp)
				return fmt.Errorf("lock N=%d: %w", n, err)
			}
			if _, err := m.Unlock(); err != nil {
				closeAll(rp)
				return fmt.Errorf("unlock N=%d: %w", n, err)
			}
			lat = append(lat, int64(time.Since(t0)))
		}
		closeAll(rp)
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		fmt.Printf("redsync cycle N=%d p50=%.1f p99=%.1f count=%d\n", n, pct(lat, 0.50), pct(lat, 0.99), len(lat))
	}
	return nil
}

// contend runs 8 goroutines on one name, 5 nodes, with Redsync's defaults, in the shape of
// `redlock bench`'s contended row at hold 0: each locks, unlocks, then steps aside until another
// goroutine has acquired, so every acquisition is a handoff (without that, the goroutine that
// just unlocked takes the free lock again at once while the others sleep out their retry delay).
func contend(nodes []string, d time.Duration) error {
	const workers = 8
	if len(nodes) < 5 {
		return fmt.Errorf("contend needs 5 nodes, got %d", len(nodes))
	}
	rs, rp := newRedsync(nodes[:5])
	defer closeAll(rp)
	name := randName("redsync-bench-contend")
	var acquired, lockErrs, unlockErrs int64
	var mu sync.Mutex
	turned := sync.NewCond(&mu)
	generation := 0
	done := false
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(d)
	timer := time.AfterFunc(d, func() {
		mu.Lock()
		done = true
		turned.Broadcast()
		mu.Unlock()
	})
	defer timer.Stop()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := rs.NewMutex(name) // one Mutex per goroutine, same name; Redsync defaults
			for time.Now().Before(end) {
				if err := m.Lock(); err != nil {
					atomic.AddInt64(&lockErrs, 1)
					continue
				}
				mu.Lock()
				generation++
				mine := generation
				turned.Broadcast()
				mu.Unlock()
				if time.Now().Before(end) {
					atomic.AddInt64(&acquired, 1)
				}
				if _, err := m.Unlock(); err != nil {
					atomic.AddInt64(&unlockErrs, 1)
				}
				mu.Lock()
				for generation == mine && !done {
					turned.Wait()
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	fmt.Printf("redsync contend8 rate=%.1f/s\n", float64(acquired)/d.Seconds())
	if lockErrs > 0 || unlockErrs > 0 {
		fmt.Fprintf(os.Stderr, "contend8: lock errors=%d unlock errors=%d\n", lockErrs, unlockErrs)
	}
	return nil
}

func main() {
	nodesFlag := flag.String("nodes", "127.0.0.1:7821,127.0.0.1:7822,127.0.0.1:7823,127.0.0.1:7824,127.0.0.1:7825", "comma-separated redis host:port list")
	dur := flag.Duration("duration", 3*time.Second, "measurement duration (per N in cycle mode)")
	mode := flag.String("mode", "cycle", "cycle|contend")
	flag.Parse()
	var nodes []string
	for _, s := range strings.Split(*nodesFlag, ",") {
		if s = strings.TrimSpace(s); s != "" {
			nodes = append(nodes, s)
		}
	}
	var err error
	switch *mode {
	case "cycle":
		err = cycle(nodes, *dur)
	case "contend":
		err = contend(nodes, *dur)
	default:
		err = fmt.Errorf("unknown -mode %q", *mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
