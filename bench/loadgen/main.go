// loadgen: the Extend event bridge's load, compiled, so the client is not the bottleneck.
//
// It calls the two OnMessage methods (docs/contract.md §1.1) with the Extend mix: 20 % UserLoggedIn,
// 80 % StatItemUpdated (stat codes enemy_kills login_count games_played headshots wins,
// values 0-999, inc 1-10), over -users users, every event with a unique id.
//
//	-mode fixed -rate 500   open loop: calls start on schedule whatever the answers do;
//	                         latency is measured from the scheduled start (no coordinated
//	                         omission)
//	-mode max -concurrency 500   closed loop: that many calls always in flight
//
// Messages are encoded by hand (protobuf wire format) and sent with a raw-bytes codec,
// so no generated code is needed. It prints one JSON summary on stdout and, with -acked,
// writes one line per acknowledged event ("L user" or "S user code value inc") for the
// runner to check against the table.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/rand"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"
)

const (
	loginMethod = "/accelbyte.iam.account.v1.UserAuthenticationUserLoggedInService/OnMessage"
	statMethod  = "/accelbyte.social.statistic.v1.StatisticStatItemUpdatedService/OnMessage"
)

var statCodes = []string{"enemy_kills", "login_count", "games_played", "headshots", "wins"}

// rawCodec sends pre-encoded bytes and ignores the (Empty) answer.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = data
	return nil
}
func (rawCodec) Name() string { return "proto" }

func init() { encoding.RegisterCodec(rawCodec{}) }

// ---------------------------------------------------------------- protobuf wire format

func appendString(b []byte, field int, s string) []byte {
	b = binary.AppendUvarint(b, uint64(field<<3|2))
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendDouble(b []byte, field int, v float64) []byte {
	b = binary.AppendUvarint(b, uint64(field<<3|1))
	return binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
}

func appendMessage(b []byte, field int, m []byte) []byte {
	b = binary.AppendUvarint(b, uint64(field<<3|2))
	b = binary.AppendUvarint(b, uint64(len(m)))
	return append(b, m...)
}

// UserLoggedIn: 2 id, 5 namespace, 9 user_id.
func loginMessage(id, namespace, user string) []byte {
	b := appendString(nil, 2, id)
	b = appendString(b, 5, namespace)
	return appendString(b, 9, user)
}

// StatItemUpdated: 1 payload (StatItem: 1 namespace, 2 stat_code, 3 user_id,
// 4 latest_value, 5 inc), 2 id, 5 namespace, 9 user_id.
func statMessage(id, namespace, user, code string, value, inc float64) []byte {
	item := appendString(nil, 1, namespace)
	item = appendString(item, 2, code)
	item = appendString(item, 3, user)
	item = appendDouble(item, 4, value)
	item = appendDouble(item, 5, inc)
	b := appendMessage(nil, 1, item)
	b = appendString(b, 2, id)
	b = appendString(b, 5, namespace)
	return appendString(b, 9, user)
}

// ---------------------------------------------------------------- the run

type call struct {
	method string
	body   []byte
	acked  string
	user   string
}

type result struct {
	latency time.Duration
	code    string
	acked   string
	user    string
	sentAt  time.Duration // since the start of the run
}

type summary struct {
	Mode        string         `json:"mode"`
	Rate        float64        `json:"offered_rate"`
	Concurrency int            `json:"concurrency"`
	Seconds     float64        `json:"seconds"`
	Sent        int            `json:"sent"`
	OK          int            `json:"ok"`
	Codes       map[string]int `json:"codes"`
	Throughput  float64        `json:"ok_per_second"`
	P50         float64        `json:"p50_ms"`
	P95         float64        `json:"p95_ms"`
	P99         float64        `json:"p99_ms"`
	Max         float64        `json:"max_ms"`
	Mean        float64        `json:"mean_ms"`
}

func main() {
	target := flag.String("target", "127.0.0.1:6565", "host:port")
	mode := flag.String("mode", "fixed", "fixed | max")
	rate := flag.Float64("rate", 500, "fixed mode: calls per second")
	concurrency := flag.Int("concurrency", 500, "max mode: calls in flight")
	duration := flag.Duration("duration", 30*time.Second, "how long to send")
	users := flag.Int("users", 10000, "distinct users (user-00000 ...)")
	namespace := flag.String("namespace", "mygame", "event namespace")
	conns := flag.Int("conns", 4, "client connections")
	timeout := flag.Duration("timeout", 30*time.Second, "per-call deadline")
	seed := flag.Int64("seed", 1, "random seed")
	runID := flag.String("run", fmt.Sprint(time.Now().UnixNano()), "prefix of event ids")
	ackedPath := flag.String("acked", "", "file for the acknowledged events")
	callsPath := flag.String("calls", "", "file with one line per call: sent_ms user code latency_ms")
	flag.Parse()

	clients := make([]*grpc.ClientConn, *conns)
	for i := range clients {
		conn, err := grpc.NewClient(*target,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		clients[i] = conn
		defer conn.Close()
	}

	var counter atomic.Int64
	var mu sync.Mutex
	rng := rand.New(rand.NewSource(*seed))
	next := func() call { // the Extend mix, unique ids
		mu.Lock()
		user := fmt.Sprintf("user-%05d", rng.Intn(*users))
		isLogin := rng.Float64() < 0.2
		code := statCodes[rng.Intn(len(statCodes))]
		value := float64(rng.Intn(1000))
		inc := float64(1 + rng.Intn(10))
		mu.Unlock()
		id := fmt.Sprintf("%s-%d", *runID, counter.Add(1))
		if isLogin {
			return call{loginMethod, loginMessage(id, *namespace, user), "L " + user, user}
		}
		return call{statMethod, statMessage(id, *namespace, user, code, value, inc),
			fmt.Sprintf("S %s %s %d %d", user, code, int(value), int(inc)), user}
	}
	var started time.Time
	send := func(conn *grpc.ClientConn, c call, scheduled time.Time) result {
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		var reply []byte
		err := conn.Invoke(ctx, c.method, &c.body, &reply)
		return result{time.Since(scheduled), status.Code(err).String(), c.acked, c.user,
			scheduled.Sub(started)}
	}

	// Warm the connections up (not measured).
	for _, conn := range clients {
		conn.Connect()
	}

	results := make(chan result, 1<<16)
	var wg sync.WaitGroup
	started = time.Now()
	end := started.Add(*duration)
	if *mode == "max" {
		for w := 0; w < *concurrency; w++ {
			wg.Add(1)
			go func(conn *grpc.ClientConn) {
				defer wg.Done()
				for time.Now().Before(end) {
					c := next()
					results <- send(conn, c, time.Now())
				}
			}(clients[w%len(clients)])
		}
	} else {
		interval := time.Duration(float64(time.Second) / *rate)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				scheduled := started.Add(time.Duration(i) * interval)
				if !scheduled.Before(end) {
					return
				}
				if d := time.Until(scheduled); d > 0 {
					time.Sleep(d)
				}
				c := next()
				wg.Add(1)
				go func(conn *grpc.ClientConn) {
					defer wg.Done()
					results <- send(conn, c, scheduled)
				}(clients[i%len(clients)])
			}
		}()
	}
	go func() { wg.Wait(); close(results) }()

	var acked *bufio.Writer
	if *ackedPath != "" {
		f, err := os.Create(*ackedPath)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		defer f.Close()
		acked = bufio.NewWriter(f)
		defer acked.Flush()
	}
	var calls *bufio.Writer
	if *callsPath != "" {
		f, err := os.Create(*callsPath)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		defer f.Close()
		calls = bufio.NewWriter(f)
		defer calls.Flush()
	}
	s := summary{Mode: *mode, Rate: *rate, Concurrency: *concurrency, Codes: map[string]int{}}
	var latencies []float64
	var total float64
	for r := range results {
		s.Sent++
		s.Codes[r.code]++
		if calls != nil {
			fmt.Fprintf(calls, "%.3f %s %s %.3f\n", float64(r.sentAt.Microseconds())/1000, r.user,
				r.code, float64(r.latency.Microseconds())/1000)
		}
		if r.code != "OK" {
			continue
		}
		ms := float64(r.latency.Microseconds()) / 1000
		latencies = append(latencies, ms)
		total += ms
		if acked != nil {
			acked.WriteString(r.acked)
			acked.WriteByte('\n')
		}
	}
	s.Seconds = time.Since(started).Seconds()
	s.OK = len(latencies)
	if *mode == "max" {
		s.Rate = 0
	} else {
		s.Concurrency = 0
	}
	if s.OK > 0 {
		sort.Float64s(latencies)
		pick := func(q float64) float64 { return latencies[int(q*float64(len(latencies)-1))] }
		s.P50, s.P95, s.P99, s.Max = pick(0.50), pick(0.95), pick(0.99), latencies[len(latencies)-1]
		s.Mean = total / float64(s.OK)
		s.Throughput = float64(s.OK) / math.Min(s.Seconds, duration.Seconds())
	}
	out, _ := json.Marshal(s)
	fmt.Println(string(out))
}
