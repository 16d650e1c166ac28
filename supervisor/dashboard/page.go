package dashboard

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"net/http"
	"strconv"
)

// initialSlot is the element of agent.html that takes the agent's detail
// (what /api/agent/ID answers) when the page is served, so the page paints
// the agent at once instead of empty until its first fetch. It is a data
// block, never run: the JSON is HTML-safe (json.Marshal escapes <, > and
// &), so no text of an agent's can end the element.
const initialSlot = `<script id="initial" type="application/json"></script>`

// agentPage splits agent.html around initialSlot.
type agentPage struct{ head, tail []byte }

func loadAgentPage(web fs.FS) agentPage {
	body, err := fs.ReadFile(web, "agent.html")
	if err != nil {
		panic(err) // the embedded file is part of the binary
	}
	head, tail, ok := bytes.Cut(body, []byte(initialSlot))
	if !ok {
		panic("dashboard: agent.html lacks " + initialSlot)
	}
	return agentPage{head: head, tail: tail}
}

// serveAgentPage is GET /agent/{id} for a valid id: agent.html with the
// agent's detail in it.
func (d *Dashboard) serveAgentPage(w http.ResponseWriter, r *http.Request, id string) {
	data, err := json.Marshal(d.detail(id))
	if err != nil {
		data = []byte("null") // the page fetches it instead
	}
	const open, end = `<script id="initial" type="application/json">`, `</script>`
	var b bytes.Buffer
	b.Grow(len(d.agent.head) + len(open) + len(data) + len(end) + len(d.agent.tail))
	b.Write(d.agent.head)
	b.WriteString(open)
	b.Write(data)
	b.WriteString(end)
	b.Write(d.agent.tail)
	secure(w)
	h := w.Header()
	h.Set("Content-Type", contentTypes[".html"])
	h.Set("Cache-Control", "no-store") // it carries the agent's state
	h.Set("Content-Length", strconv.Itoa(b.Len()))
	if r.Method != http.MethodHead {
		_, _ = w.Write(b.Bytes())
	}
}
