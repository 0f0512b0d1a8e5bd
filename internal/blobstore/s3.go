package blobstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
)

// s3Store is one S3 bucket. The client comes from the SDK's default
// configuration: region and credentials from the environment, the shared
// config files, the ECS task role or web identity (IRSA); the endpoint from
// AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL when set, which the SDK reads
// itself.
type s3Store struct {
	bucket string
	client *s3.Client
}

func newS3(ctx context.Context, bucket string) (*s3Store, error) {
	cfg, err := awsconfig.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, fmt.Errorf("load AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		return nil, fmt.Errorf("no AWS region: set AWS_REGION (ECS sets it) or region in the shared config")
	}
	// An S3-compatible store on an endpoint of its own rarely resolves
	// bucket.host names: address buckets by path there. (AWS's own
	// endpoints accept both.)
	pathStyle := os.Getenv("AWS_ENDPOINT_URL_S3") != "" || os.Getenv("AWS_ENDPOINT_URL") != ""
	client := s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.UsePathStyle = pathStyle
		// Stores other than AWS's send no checksum; the SDK would log
		// that on every read.
		o.DisableLogOutputChecksumValidationSkipped = true
	})
	return &s3Store{bucket: bucket, client: client}, nil
}

func (s *s3Store) Get(ctx context.Context, key string, max int64) ([]byte, string, error) {
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key)})
	if err != nil {
		return nil, "", s3Err(err)
	}
	defer out.Body.Close()
	data, err := readBounded(out.Body, max)
	if err != nil {
		return nil, "", err
	}
	return data, aws.ToString(out.ETag), nil
}

func (s *s3Store) Version(ctx context.Context, key string) (string, error) {
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key)})
	if err != nil {
		return "", s3Err(err)
	}
	return aws.ToString(out.ETag), nil
}

// Create is a conditional PutObject (If-None-Match: *), which S3 answers
// 412 PreconditionFailed when the key exists. Two conditional writes of
// one key at once may get 409 ConditionalRequestConflict, which S3 asks to
// retry: Create does, a few times.
func (s *s3Store) Create(ctx context.Context, key string, data []byte) error {
	var err error
	for range 3 {
		_, err = s.client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key),
			Body: bytes.NewReader(data), IfNoneMatch: aws.String("*"), ContentType: aws.String(contentType)})
		var ae smithy.APIError
		if !errors.As(err, &ae) || ae.ErrorCode() != "ConditionalRequestConflict" {
			break
		}
	}
	return s3Err(err)
}

func (s *s3Store) List(ctx context.Context, prefix, startAfter string, fn func(string) error) error {
	in := &s3.ListObjectsV2Input{Bucket: aws.String(s.bucket), Prefix: aws.String(prefix)}
	if startAfter != "" {
		in.StartAfter = aws.String(startAfter)
	}
	p := s3.NewListObjectsV2Paginator(s.client, in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return s3Err(err)
		}
		for _, o := range page.Contents {
			if err := fn(aws.ToString(o.Key)); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *s3Store) Dirs(ctx context.Context, prefix string) ([]string, error) {
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: aws.String(s.bucket), Prefix: aws.String(prefix), Delimiter: aws.String("/")})
	var out []string
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, s3Err(err)
		}
		for _, cp := range page.CommonPrefixes {
			out = append(out, dirName(prefix, aws.ToString(cp.Prefix)))
		}
	}
	return out, nil
}

func (s *s3Store) Close() error { return nil }

// s3Err marks a missing object ErrNotFound (GetObject says NoSuchKey,
// HeadObject, which has no body, NotFound) and a failed conditional write
// ErrExists.
func s3Err(err error) error {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "NoSuchKey", "NotFound":
			return fmt.Errorf("%w: %w", ErrNotFound, err)
		case "PreconditionFailed":
			return fmt.Errorf("%w: %w", ErrExists, err)
		}
	}
	return err
}
