package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/kernel/config"
)

// apiHealthOptions are the flags of `api health`.
type apiHealthOptions struct {
	// url is the health endpoint; empty derives it from CHIO_LISTEN_ADDR
	// and CHIO_HEALTH_PATH, else kernel.yaml, as `api protect` would.
	url string
	// config is kernel.yaml ("" : $CHIO_KERNEL_CONFIG_PATH, else none).
	config string
	// timeout bounds the whole check.
	timeout time.Duration
}

func (o *apiHealthOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.url, "url", "", "health endpoint (default http://127.0.0.1:PORT$"+config.EnvHealthPath+" from $"+config.EnvListenAddr+", else from the config's sidecar section)")
	addConfigFlag(fs, &o.config)
	fs.DurationVar(&o.timeout, "timeout", 3*time.Second, "give up after this long")
}

func newAPIHealthCommand() *cobra.Command {
	o := &apiHealthOptions{}
	cmd := &cobra.Command{
		Use:   "health",
		Short: "Exit 0 when the local sidecar is ready (a container health check)",
		Long: `health asks a running sidecar's readiness endpoint and exits 0 when it answers
200, 1 otherwise, printing its answer. Container images without a shell or curl
use it as their health check.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			u := o.url
			if u == "" {
				var sc config.Sidecar
				if path := config.ConfigPath(o.config, os.LookupEnv); path != "" {
					c, err := config.Load(path, os.LookupEnv)
					if err != nil {
						return err
					}
					sc = c.Sidecar
				}
				var err error
				if u, err = localHealthURL(os.LookupEnv, sc); err != nil {
					return err
				}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
			if err != nil {
				return fmt.Errorf("health: %w", err)
			}
			resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil}}).Do(req)
			if err != nil {
				return fmt.Errorf("health: %w", err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			cmd.OutOrStdout().Write(body)
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("health: %s answered %s", u, resp.Status)
			}
			return nil
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

// localHealthURL is the readiness URL of a sidecar started with the same
// environment and kernel.yaml: its port on loopback (a wildcard listen
// address is reached there too) and its health path.
func localHealthURL(lookup func(string) (string, bool), sc config.Sidecar) (string, error) {
	listen := config.Pick(lookup, "", config.EnvListenAddr, sc.Listen, config.DefaultSidecarListen)
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("health: %s %q is not host:port: %w", config.EnvListenAddr, listen, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	path := config.Pick(lookup, "", config.EnvHealthPath, sc.HealthPath, config.DefaultHealthPath)
	return "http://" + net.JoinHostPort(host, port) + path, nil
}
