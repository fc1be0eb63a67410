// Command ttrpc_client is the Go side of the ttRPC interop suite: a client on
// containerd's ttrpc package whose messages are built from upstream's
// .proto files (a FileDescriptorSet made by protoc), not from the project's.
//
// It reads one JSON call specification per line on stdin and writes one JSON
// result per call on stdout:
//
//	{"id": "x", "socket": "/path.sock", "service": "api.GetResourceService",
//	 "method": "GetResource", "request": {...protojson...},
//	 "timeout_ms": 0, "parallel": 1, "pad": 0, "raw_timeout_nano": 0}
//
// Calls go through one ttrpc.Client per socket (so "parallel" calls share a
// connection). With "raw_timeout_nano" set the request is hand-framed with
// ttrpc's own Request/Response types on a fresh connection, so the server's
// deadline is observed without a client-side one. "pad" appends an unknown
// field of that many bytes to the request (for oversize cases).
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	gogoproto "github.com/gogo/protobuf/proto"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

type spec struct {
	ID             string          `json:"id"`
	Socket         string          `json:"socket"`
	Service        string          `json:"service"`
	Method         string          `json:"method"`
	Request        json.RawMessage `json:"request"`
	TimeoutMs      int64           `json:"timeout_ms"`
	Parallel       int             `json:"parallel"`
	Pad            int             `json:"pad"`
	RawTimeoutNano int64           `json:"raw_timeout_nano"`
}

type result struct {
	ID       string          `json:"id"`
	N        int             `json:"n"`
	Code     int             `json:"code"`
	Message  string          `json:"message"`
	Response json.RawMessage `json:"response,omitempty"`
	Local    string          `json:"local_error,omitempty"`
}

// wire adapts a protobuf-go message to the gogo codec ttrpc 1.1.1 uses.
type wire struct {
	msg proto.Message
	raw []byte // used when the method is unknown to the descriptors
}

func (w *wire) Reset()         {}
func (w *wire) String() string { return "wire" }
func (w *wire) ProtoMessage()  {}

func (w *wire) Marshal() ([]byte, error) {
	if w.msg == nil {
		return w.raw, nil
	}
	return proto.Marshal(w.msg)
}

func (w *wire) Unmarshal(b []byte) error {
	if w.msg == nil {
		w.raw = append([]byte(nil), b...)
		return nil
	}
	return proto.Unmarshal(b, w.msg)
}

var files *protoregistry.Files

func loadDescriptors(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(data, &set); err != nil {
		return err
	}
	files, err = protodesc.NewFiles(&set)
	return err
}

// messages returns the request and response messages of service/method,
// or nil, nil when the descriptors do not declare it.
func messages(s spec) (proto.Message, proto.Message, error) {
	d, err := files.FindDescriptorByName(protoreflect.FullName(s.Service))
	if err != nil {
		return nil, nil, nil
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, nil, fmt.Errorf("%s is not a service", s.Service)
	}
	md := sd.Methods().ByName(protoreflect.Name(s.Method))
	if md == nil {
		return nil, nil, nil
	}
	req := dynamicpb.NewMessage(md.Input())
	if len(s.Request) > 0 {
		if err := protojson.Unmarshal(s.Request, req); err != nil {
			return nil, nil, fmt.Errorf("request for %s/%s: %w", s.Service, s.Method, err)
		}
	}
	return req, dynamicpb.NewMessage(md.Output()), nil
}

func encodeRequest(s spec, req proto.Message) ([]byte, error) {
	var b []byte
	if req != nil {
		var err error
		if b, err = proto.Marshal(req); err != nil {
			return nil, err
		}
	}
	if s.Pad > 0 {
		// an unknown field (number 999), which every decoder must skip
		b = protowire.AppendTag(b, 999, protowire.BytesType)
		b = protowire.AppendBytes(b, make([]byte, s.Pad))
	}
	return b, nil
}

func render(resp proto.Message) json.RawMessage {
	out, err := protojson.MarshalOptions{EmitUnpopulated: false}.Marshal(resp)
	if err != nil {
		return nil
	}
	return out
}

var (
	clientsMu sync.Mutex
	clients   = map[string]*ttrpc.Client{}
)

func client(socket string) (*ttrpc.Client, error) {
	clientsMu.Lock()
	defer clientsMu.Unlock()
	if c, ok := clients[socket]; ok {
		return c, nil
	}
	conn, err := net.Dial("unix", socket)
	if err != nil {
		return nil, err
	}
	c := ttrpc.NewClient(conn)
	clients[socket] = c
	return c, nil
}

func call(s spec, n int) result {
	r := result{ID: s.ID, N: n}
	req, resp, err := messages(s)
	if err != nil {
		r.Code, r.Local = -1, err.Error()
		return r
	}
	payload, err := encodeRequest(s, req)
	if err != nil {
		r.Code, r.Local = -1, err.Error()
		return r
	}
	if s.RawTimeoutNano != 0 {
		return rawCall(s, n, payload, resp)
	}
	c, err := client(s.Socket)
	if err != nil {
		r.Code, r.Local = -1, err.Error()
		return r
	}
	ctx := context.Background()
	if s.TimeoutMs > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(s.TimeoutMs)*time.Millisecond)
		defer cancel()
	}
	out := &wire{msg: resp}
	err = c.Call(ctx, s.Service, s.Method, &wire{raw: payload}, out)
	if err != nil {
		if st, ok := status.FromError(err); ok {
			r.Code, r.Message = int(st.Code()), st.Message()
		} else {
			r.Code, r.Local = -1, err.Error()
		}
		return r
	}
	if resp != nil {
		r.Response = render(resp)
	}
	return r
}

// rawCall frames one request by hand with ttrpc's own Request type and reads
// the answer with its Response type, on a connection of its own.
func rawCall(s spec, n int, payload []byte, resp proto.Message) result {
	r := result{ID: s.ID, N: n}
	conn, err := net.Dial("unix", s.Socket)
	if err != nil {
		r.Code, r.Local = -1, err.Error()
		return r
	}
	defer conn.Close()
	body, err := gogoproto.Marshal(&ttrpc.Request{
		Service: s.Service, Method: s.Method, Payload: payload, TimeoutNano: s.RawTimeoutNano,
	})
	if err != nil {
		r.Code, r.Local = -1, err.Error()
		return r
	}
	hdr := make([]byte, 10)
	binary.BigEndian.PutUint32(hdr[0:4], uint32(len(body)))
	binary.BigEndian.PutUint32(hdr[4:8], 1)
	hdr[8] = 1
	if _, err := conn.Write(append(hdr, body...)); err != nil {
		r.Code, r.Local = -1, err.Error()
		return r
	}
	_ = conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.ReadFull(conn, hdr); err != nil {
		r.Code, r.Local = -1, err.Error()
		return r
	}
	data := make([]byte, binary.BigEndian.Uint32(hdr[0:4]))
	if _, err := io.ReadFull(conn, data); err != nil {
		r.Code, r.Local = -1, err.Error()
		return r
	}
	var tr ttrpc.Response
	if err := gogoproto.Unmarshal(data, &tr); err != nil {
		r.Code, r.Local = -1, err.Error()
		return r
	}
	if tr.Status != nil {
		r.Code, r.Message = int(tr.Status.Code), tr.Status.Message
	}
	if r.Code == 0 && resp != nil {
		if err := proto.Unmarshal(tr.Payload, resp); err == nil {
			r.Response = render(resp)
		}
	}
	return r
}

func main() {
	desc := flag.String("descriptors", "", "FileDescriptorSet of the upstream protos")
	flag.Parse()
	if err := loadDescriptors(*desc); err != nil {
		fmt.Fprintln(os.Stderr, "descriptors:", err)
		os.Exit(2)
	}
	enc := json.NewEncoder(os.Stdout)
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	for in.Scan() {
		var s spec
		if err := json.Unmarshal(in.Bytes(), &s); err != nil {
			fmt.Fprintln(os.Stderr, "spec:", err)
			os.Exit(2)
		}
		if s.Parallel < 1 {
			s.Parallel = 1
		}
		results := make([]result, s.Parallel)
		var wg sync.WaitGroup
		for i := 0; i < s.Parallel; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				results[i] = call(s, i)
			}(i)
		}
		wg.Wait()
		for _, r := range results {
			if err := enc.Encode(r); err != nil {
				os.Exit(3)
			}
		}
	}
}
