// goplugin: the Go dummy plugin of Kong #8531, an embedded go-pdk server (ProtoBuf protocol).
// In the access phase it sets the upstream request header `x-goplugin` to this server's pid,
// so a response from reflection shows which plugin-server generation handled the request.
// Run: `goplugin -kong-prefix DIR` (socket DIR/goplugin.socket) or `goplugin -dump`.
package main

import (
	"os"
	"strconv"

	"github.com/Kong/go-pdk"
	"github.com/Kong/go-pdk/server"
)

// Config is the plugin's (empty) configuration.
type Config struct {
	Message string `json:"message"`
}

// New is the constructor go-pdk calls for each StartInstance.
func New() interface{} {
	return &Config{}
}

// Access sets the header the load test looks for.
func (conf Config) Access(kong *pdk.PDK) {
	_ = kong.ServiceRequest.SetHeader("x-goplugin", strconv.Itoa(os.Getpid()))
}

func main() {
	_ = server.StartServer(New, "0.1.0", 0)
}
