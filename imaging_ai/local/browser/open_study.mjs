// Opens one study in OHIF with Debian's headless chromium, as a radiologist would: loads the
// SEG onto the CT and lists its segments, then opens the SR. Prints what the viewer shows as
// JSON and saves a screenshot of each step; the caller judges the text.
// usage: node open_study.mjs CHROMIUM STUDY_URL OUT_DIR EXPECT_JSON
//   EXPECT_JSON: {"segments": ["Nodule"], "measurements": ["Volume: 515.62 mm3"]}, texts to
//   wait for (up to TIMEOUT_MS each) before reading the page, so no fixed sleep is needed.
import { chromium } from 'playwright-core';
import { join } from 'node:path';

const [executablePath, studyUrl, outDir, expectJson] = process.argv.slice(2);
const expected = JSON.parse(expectJson);
const TIMEOUT_MS = Number(process.env.VIEWER_TIMEOUT_MS || 90_000);
const seen = { segmentation_panel: '', sr_viewport_labels: [], screenshots: [], errors: [] };

async function waitForTexts(locatorFor, texts) {
  for (const text of texts) {
    try {
      await locatorFor(text).first().waitFor({ state: 'attached', timeout: TIMEOUT_MS });
    } catch (error) {
      seen.errors.push(`not shown within ${TIMEOUT_MS} ms: ${text}`);
    }
  }
}

const browser = await chromium.launch({ executablePath });
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 810 } });
  page.setDefaultTimeout(TIMEOUT_MS);
  // A returning user: the first-visit tour is done. The investigational-use notice is
  // acknowledged by clicking it, below.
  await page.addInitScript(() => {
    localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));
  });
  await page.goto(studyUrl);
  await page.getByRole('button', { name: 'Confirm and hide' }).click();
  const series = (modality) =>
    page
      .locator('[data-cy="study-browser-thumbnail-no-image"]')
      .filter({ has: page.getByText(modality, { exact: true }) });

  // The SEG: open it on its CT ("Do you want to open this Segmentation?" Yes).
  await series('SEG').dblclick();
  await page.getByRole('button', { name: 'Yes' }).click();
  await page.locator('[data-cy="panelSegmentation-btn"]').click();
  await waitForTexts((text) => page.getByText(text, { exact: true }), expected.segments);
  // The panel's text: the smallest block around its "Segmentations" header that lists them.
  seen.segmentation_panel = await page
    .getByText('Segmentations', { exact: true })
    .first()
    .evaluate((header, labels) => {
      let block = header;
      while (block.parentElement && !labels.every((label) => block.innerText.includes(label))) {
        block = block.parentElement;
      }
      return block.innerText;
    }, expected.segments);
  const segPng = join(outDir, 'ohif-seg.png');
  await page.screenshot({ path: segPng });
  seen.screenshots.push(segPng);

  // The SR: its measurements are drawn on the CT with their values as SVG labels.
  await series('SR').dblclick();
  // Read-only: do not turn the AI's findings into tracked measurements of this user.
  await page.getByRole('button', { name: 'No', exact: true }).click();
  const labels = page.locator('svg text tspan');
  // Under load the first render of the SR's annotations can be missed; scrolling one image
  // away and back (what a reader does) renders them again. Bounded: three rounds.
  for (let round = 0; round < 3; round += 1) {
    const shown = await labels.filter({ hasText: expected.measurements[0] ?? '' }).count();
    if (shown > 0) break;
    try {
      await labels.first().waitFor({ state: 'attached', timeout: TIMEOUT_MS / 3 });
    } catch {
      const viewport = page.locator('[data-cy="viewport-pane"]').first();
      await viewport.hover();
      await page.mouse.wheel(0, 120);
      await page.mouse.wheel(0, -120);
    }
  }
  await waitForTexts((text) => labels.filter({ hasText: text }), expected.measurements);
  seen.sr_viewport_labels = await labels.evaluateAll((spans) =>
    spans.map((span) => span.textContent),
  );
  const srPng = join(outDir, 'ohif-sr.png');
  await page.screenshot({ path: srPng });
  seen.screenshots.push(srPng);
} catch (error) {
  seen.errors.push(String(error).split('\n')[0]);
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
