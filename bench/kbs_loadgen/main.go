// Command kbs_loadgen drives a KBS with concurrent RCAR clients for bench/kbs_load.py:
// each client runs auth -> attest -> resource back to back over one keep-alive HTTP/1.1
// connection, with nonce-bound sample evidence (the report data is H(JCS(runtime data))
// over the nonce of its own /auth) and its own EC P-256 TEE key, and decrypts every
// resource JWE (ECDH-ES+A256KW, A256GCM) and compares it with the expected value.
// "plain" mode sends GET /healthz instead. Standard library only (Go 1.19).
// Prints one JSON object: counts, latency percentiles and its own CPU time in the window.
package main

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"math/big"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

const alg = "ECDH-ES+A256KW"

var b64u = base64.RawURLEncoding

type teeKey struct {
	priv *ecdsa.PrivateKey
	jwk  string // the tee-pubkey JWK as JCS (sorted members, no spaces)
}

func newKey() (*teeKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	x := b64u.EncodeToString(k.X.FillBytes(make([]byte, 32)))
	y := b64u.EncodeToString(k.Y.FillBytes(make([]byte, 32)))
	jwk := fmt.Sprintf(`{"alg":%q,"crv":"P-256","kty":"EC","x":%q,"y":%q}`, alg, x, y)
	return &teeKey{k, jwk}, nil
}

// jcsString is a JSON string as RFC 8785 writes it.
func jcsString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\b':
			b.WriteString(`\b`)
		case r == '\f':
			b.WriteString(`\f`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func hasher(name string) (hash.Hash, error) {
	switch name {
	case "sha256":
		return sha256.New(), nil
	case "sha384", "":
		return sha512.New384(), nil
	case "sha512":
		return sha512.New(), nil
	}
	return nil, fmt.Errorf("hash %q not supported here", name)
}

type client struct {
	http     *http.Client
	url      string
	key      *teeKey
	resource string
	expect   []byte
}

func (c *client) do(method, path string, body []byte, hdr map[string]string) (*http.Response, []byte, error) {
	req, err := http.NewRequest(method, c.url+path, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != 200 {
		return nil, nil, fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, data)
	}
	return resp, data, nil
}

var authBody = []byte(`{"version":"0.4.0","tee":"sample","extra-params":{"supported-hash-algorithms":["sha256","sha384","sha512","sm3"]}}`)

func (c *client) flow() error {
	resp, data, err := c.do("POST", "/kbs/v0/auth", authBody, nil)
	if err != nil {
		return err
	}
	var ch struct {
		Nonce string          `json:"nonce"`
		Extra json.RawMessage `json:"extra-params"`
	}
	if err := json.Unmarshal(data, &ch); err != nil || ch.Nonce == "" {
		return fmt.Errorf("auth answer: %v", err)
	}
	hashName := "sha384"
	var extra struct {
		Sel string `json:"selected-hash-algorithm"`
	}
	if json.Unmarshal(ch.Extra, &extra) == nil && extra.Sel != "" {
		hashName = strings.ToLower(extra.Sel)
	}
	var sid string
	for _, ck := range resp.Cookies() {
		if ck.Name == "kbs-session-id" {
			sid = ck.Value
		}
	}
	if sid == "" {
		return errors.New("no kbs-session-id cookie")
	}
	h, err := hasher(hashName)
	if err != nil {
		return err
	}
	nonce := jcsString(ch.Nonce)
	h.Write([]byte(`{"additional-evidence":"","nonce":` + nonce + `,"tee-pubkey":` + c.key.jwk + `}`))
	rd := base64.StdEncoding.EncodeToString(h.Sum(nil))
	body := `{"runtime-data":{"nonce":` + nonce + `,"tee-pubkey":` + c.key.jwk + `},` +
		`"tee-evidence":{"primary_evidence":{"svn":"1","report_data":"` + rd + `"},"additional_evidence":""}}`
	_, data, err = c.do("POST", "/kbs/v0/attest", []byte(body), map[string]string{"Cookie": "kbs-session-id=" + sid})
	if err != nil {
		return err
	}
	var tok struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(data, &tok); err != nil || tok.Token == "" {
		return fmt.Errorf("attest answer: %v", err)
	}
	_, data, err = c.do("GET", "/kbs/v0/resource/"+c.resource, nil, map[string]string{"Authorization": "Bearer " + tok.Token})
	if err != nil {
		return err
	}
	plain, err := decrypt(data, c.key.priv)
	if err != nil {
		return err
	}
	if !bytes.Equal(plain, c.expect) {
		return errors.New("the decrypted resource differs from the one stored")
	}
	return nil
}

// decrypt opens the KBS's flattened JWE (ECDH-ES+A256KW, A256GCM) with the TEE key.
func decrypt(doc []byte, priv *ecdsa.PrivateKey) ([]byte, error) {
	var j struct{ Protected, EncryptedKey, IV, Ciphertext, Tag string }
	var raw map[string]string
	if err := json.Unmarshal(doc, &raw); err != nil {
		return nil, err
	}
	j.Protected, j.EncryptedKey, j.IV, j.Ciphertext, j.Tag = raw["protected"], raw["encrypted_key"], raw["iv"], raw["ciphertext"], raw["tag"]
	hdrJSON, err := b64u.DecodeString(j.Protected)
	if err != nil {
		return nil, err
	}
	var hdr struct {
		Alg, Enc string
		Epk      struct{ Crv, X, Y string }
	}
	if err := json.Unmarshal(hdrJSON, &hdr); err != nil {
		return nil, err
	}
	if hdr.Alg != alg || hdr.Enc != "A256GCM" || hdr.Epk.Crv != "P-256" {
		return nil, fmt.Errorf("unexpected JWE header %s", hdrJSON)
	}
	xb, e1 := b64u.DecodeString(hdr.Epk.X)
	yb, e2 := b64u.DecodeString(hdr.Epk.Y)
	if e1 != nil || e2 != nil {
		return nil, errors.New("bad epk")
	}
	curve := elliptic.P256()
	ex, ey := new(big.Int).SetBytes(xb), new(big.Int).SetBytes(yb)
	if !curve.IsOnCurve(ex, ey) {
		return nil, errors.New("epk not on P-256")
	}
	zx, _ := curve.ScalarMult(ex, ey, priv.D.FillBytes(make([]byte, 32)))
	// RFC 7518 4.6 Concat KDF: one SHA-256 round, empty apu/apv, 256-bit key
	kdf := sha256.New()
	kdf.Write([]byte{0, 0, 0, 1})
	kdf.Write(zx.FillBytes(make([]byte, 32)))
	binary.Write(kdf, binary.BigEndian, uint32(len(alg)))
	kdf.Write([]byte(alg))
	kdf.Write([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0})
	cek, err := unwrap(kdf.Sum(nil), j.EncryptedKey)
	if err != nil {
		return nil, err
	}
	iv, e1 := b64u.DecodeString(j.IV)
	ct, e2 := b64u.DecodeString(j.Ciphertext)
	tag, e3 := b64u.DecodeString(j.Tag)
	if e1 != nil || e2 != nil || e3 != nil {
		return nil, errors.New("bad JWE base64")
	}
	blk, _ := aes.NewCipher(cek)
	gcm, err := cipher.NewGCM(blk)
	if err != nil {
		return nil, err
	}
	return gcm.Open(nil, iv, append(ct, tag...), []byte(j.Protected))
}

// unwrap is RFC 3394 AES key unwrap with the default IV.
func unwrap(kek []byte, wrappedB64 string) ([]byte, error) {
	w, err := b64u.DecodeString(wrappedB64)
	if err != nil || len(w) != 40 {
		return nil, errors.New("wrapped key is not 40 bytes")
	}
	blk, _ := aes.NewCipher(kek)
	n := len(w)/8 - 1
	a := append([]byte(nil), w[:8]...)
	r := make([][]byte, n)
	for i := range r {
		r[i] = append([]byte(nil), w[8*(i+1):8*(i+2)]...)
	}
	buf := make([]byte, 16)
	for j := 5; j >= 0; j-- {
		for i := n; i >= 1; i-- {
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(buf[:8], binary.BigEndian.Uint64(a)^t)
			copy(buf[8:], r[i-1])
			blk.Decrypt(buf, buf)
			copy(a, buf[:8])
			copy(r[i-1], buf[8:])
		}
	}
	if subtle.ConstantTimeCompare(a, []byte{0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6}) != 1 {
		return nil, errors.New("AES key unwrap failed")
	}
	return bytes.Join(r, nil), nil
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func pct(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	i := int(p / 100 * float64(len(xs)))
	if i >= len(xs) {
		i = len(xs) - 1
	}
	return xs[i]
}

func main() {
	url := flag.String("url", "", "KBS root URL")
	clients := flag.Int("clients", 16, "concurrent clients")
	seconds := flag.Float64("seconds", 10, "measured seconds")
	warmup := flag.Float64("warmup", 1, "unmeasured seconds first")
	mode := flag.String("mode", "flow", "flow or plain")
	resource := flag.String("resource", "default/bench/secret", "resource path")
	expect := flag.String("expect", "bench-secret", "the resource's value")
	flag.Parse()
	tr := &http.Transport{MaxIdleConnsPerHost: *clients, DisableCompression: true}
	hc := &http.Client{Transport: tr, Timeout: 120 * time.Second}
	var mu sync.Mutex
	var lat []float64
	var errs []string
	run := func(d time.Duration, record bool) {
		deadline := time.Now().Add(d)
		var wg sync.WaitGroup
		for i := 0; i < *clients; i++ {
			key, err := newKey() // one TEE key per client, as one attestation agent keeps its key
			if err != nil {
				panic(err)
			}
			c := &client{hc, strings.TrimRight(*url, "/"), key, *resource, []byte(*expect)}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(deadline) {
					t0 := time.Now()
					var err error
					if *mode == "plain" {
						_, _, err = c.do("GET", "/healthz", nil, nil)
					} else {
						err = c.flow()
					}
					dt := time.Since(t0).Seconds()
					if record {
						mu.Lock()
						if err != nil {
							errs = append(errs, err.Error())
						} else {
							lat = append(lat, dt)
						}
						mu.Unlock()
					}
				}
			}()
		}
		wg.Wait()
	}
	run(time.Duration(*warmup*float64(time.Second)), false)
	c0, t0 := cpuSeconds(), time.Now()
	run(time.Duration(*seconds*float64(time.Second)), true)
	wall, cpu := time.Since(t0).Seconds(), cpuSeconds()-c0
	sort.Float64s(lat)
	out := map[string]any{
		"mode": *mode, "clients": *clients, "n": len(lat), "errors": len(errs), "wall_s": wall,
		"rps": float64(len(lat)) / wall, "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3,
		"client_cpu_s": cpu, "decrypted_and_checked": *mode == "flow",
	}
	if len(errs) > 0 {
		out["first_error"] = errs[0]
	}
	json.NewEncoder(os.Stdout).Encode(out)
	if len(errs) > 0 {
		os.Exit(1)
	}
}
