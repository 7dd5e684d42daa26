// The official openai Node SDK as a client of the gateway: one scenario per run, its outcome
// printed as one JSON line for tests/test_node_sdk.py. Usage: node sdk.mjs BASE_URL KEY SCENARIO
import OpenAI, { toFile } from "openai";

const [baseURL, apiKey, scenario] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const prompt = "A small red cube on a white background.";
// A 1x1 PNG (the fake upstream's own), as an upload.
const png = Buffer.from(
  "89504e470d0a1a0a0000000d4948445200000001000000010806000000" +
  "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e2a5f6" +
  "b60000000049454e44ae426082", "hex");

async function events(stream) {
  const out = [];
  for await (const event of stream) {
    out.push({ type: event.type, extra: event.extra ?? null, usage: event.usage ?? null });
  }
  return out;
}

const scenarios = {
  async generate() {
    const result = await client.images.generate({ model: "openai/gpt-image-1", prompt, size: "1024x1024" });
    return { images: result.data.length, attempts: result.extra.routing.attempts };
  },
  async stream() {
    const stream = await client.images.generate({ model: "openai/gpt-image-1", prompt, stream: true, partial_images: 2 });
    return { events: await events(stream) };
  },
  async edit() {
    const result = await client.images.edit({
      model: "openai/gpt-image-1", prompt, image: [await toFile(png, "a.png", { type: "image/png" }),
                                                  await toFile(png, "b.png", { type: "image/png" })] });
    return { images: result.data.length, attempts: result.extra.routing.attempts };
  },
  async "edit-stream"() {
    const stream = await client.images.edit({
      model: "openai/gpt-image-1", prompt, image: await toFile(png, "a.png", { type: "image/png" }),
      stream: true, partial_images: 1 });
    return { events: await events(stream) };
  },
  async "stream-error"() {
    const seen = [];
    try {
      const stream = await client.images.generate({ model: "openai/gpt-image-1", prompt, stream: true, partial_images: 2 });
      for await (const event of stream) seen.push(event.type);
      return { raised: false, seen };
    } catch (error) {
      return { raised: error instanceof OpenAI.APIError, seen, error: error.error ?? null, message: error.message };
    }
  },
  async "bad-request"() {
    try {
      await client.images.generate({ model: "openai/gpt-image-1", prompt, quality: "standard" });
      return { raised: false };
    } catch (error) {
      return { raised: true, status: error.status, code: error.code, param: error.param, kind: error.constructor.name };
    }
  },
};

const outcome = await scenarios[scenario]();
console.log(JSON.stringify(outcome));
